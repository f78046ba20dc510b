"""The node's own files, one owner each, shared by the agent and the claim.

- `config`: `tether.conf` and the one boolean parser (`parse_bool`);
- `identity`: the machine GUID;
- `cloud_d`: everything in `cloud.d/` (claimed id, `cloud.conf`, token, rooms).

`tether.agent` and `tether.claim` both import from here and never from each
other, except the agent's entry point, which runs the claim command.
"""
