"""The link protocol (the ACLK), free of I/O, shared by agent, Cloud and tests.

- `frames`: the typed, versioned frames and their MessagePack encoding.
- `link`: the per-connection state machine and close codes.
- `auth`: the challenge/answer exchange, its wire shapes and crypto.
- `backoff`: reconnect delays.
- `states`: node presence on the Cloud.

See docs/protocol.md.
"""
