"""The agent's `[host labels]` (tether.conf): `key = value` lines, as in
Netdata's netdata.conf, sent to the Cloud in Hello and, after `tether-cli
reload-labels`, in a NodeUpdate (docs/agent.md, docs/protocol.md).

Keys are kept as written (configparser would lower-case them: the section is
read with case kept). A line that breaks the label rule
(tether.protocol.labels) is skipped and named in the problems, so the agent
logs it with the fix; past MAX_LABELS the rest are skipped too.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from tether.protocol.labels import MAX_LABELS, problem

SECTION = "host labels"


def read(path: Path | None) -> tuple[dict[str, str], list[str]]:
    """(labels, problems) from the `[host labels]` of tether.conf at `path`
    (a missing file or section: no labels)."""
    if path is None or not path.exists():
        return {}, []
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=("#", ";"),
        default_section="__defaults__",
        strict=False,
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys keep their case
    try:
        parser.read_string(path.read_text(), source=str(path))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        return {}, [f"{path}: cannot read [{SECTION}]: {exc}"]
    if not parser.has_section(SECTION):
        return {}, []
    labels: dict[str, str] = {}
    problems: list[str] = []
    for key, value in parser.items(SECTION, raw=True):
        key, value = key.strip(), value.strip()
        why = problem(key, value)
        if why is not None:
            problems.append(f"{path}: [{SECTION}] {why}; fix or remove that line")
        elif len(labels) >= MAX_LABELS:
            problems.append(
                f"{path}: [{SECTION}] has more than {MAX_LABELS} labels; {key!r} and later "
                "ones are not sent"
            )
            break
        else:
            labels[key] = value
    return labels, problems
