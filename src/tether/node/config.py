"""The agent's `tether.conf`: INI sections `[global]`, `[web]`, `[cloud]`,
`[directories]`, keys with spaces as in the reference (`run as user`).

Every Tether command on the node reads it through here, so the claim command
and the link see the same `[cloud] proxy`. Every yes/no setting of the node
(here and in `cloud.d/cloud.conf`) goes through `parse_bool`.
"""

from __future__ import annotations

import configparser
import io
from pathlib import Path

from tether.atomic import write_atomic

DEFAULTS: dict[str, dict[str, str]] = {
    "global": {
        "run as user": "",
        "update every": "1",
        "hostname": "",
        "history seconds": "3600",
    },
    "web": {
        "bind to": "*",
        "default port": "19999",
        "allow connections from": "*",
    },
    "cloud": {
        "proxy": "none",
        # Rotate cloud.d's key when older than this (tether.agent.rotate_key); 0 = never.
        "key rotation days": "0",
    },
    "directories": {},
}


# As in the reference: yes/true/on/1 and "auto" (no setting here has a third,
# on-demand state) are on; no/false/off/0 are off. enabled/disabled too, so
# `cloud.conf`'s `enabled = disabled` means off for the agent and the claim.
TRUE_WORDS = frozenset({"yes", "true", "on", "1", "auto", "enabled"})
FALSE_WORDS = frozenset({"no", "false", "off", "0", "disabled"})


def parse_bool(raw: str | None, default: bool) -> bool:
    """A yes/no setting, case and surrounding spaces ignored; any other word
    (or none) means the setting's default."""
    value = (raw or "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    return default


class ConfigError(Exception):
    """tether.conf cannot be read; the message names the file and the line."""


class AgentConfig:
    def __init__(self, parser: configparser.ConfigParser, path: Path | None) -> None:
        self._parser = parser
        self.path = path
        # Values set at run time (not from the file) and who set them, so the
        # log and aclk-state can say where a setting came from.
        self._origins: dict[tuple[str, str], str] = {}

    def get(self, section: str, key: str, fallback: str | None = None) -> str:
        if self._parser.has_option(section, key):
            return self._parser.get(section, key).strip()
        if fallback is not None:
            return fallback
        return DEFAULTS.get(section, {}).get(key, "")

    def get_int(self, section: str, key: str) -> int:
        raw = self.get(section, key)
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{self.path}: [{section}] {key} = {raw!r} is not a whole number"
            ) from exc

    def get_bool(self, section: str, key: str, default: bool) -> bool:
        return parse_bool(self.get(section, key), default)

    def set(self, section: str, key: str, value: str, origin: str | None = None) -> None:
        if not self._parser.has_section(section):
            self._parser.add_section(section)
        self._parser.set(section, key, value)
        if origin:
            self._origins[(section, key)] = origin
        else:
            self._origins.pop((section, key), None)

    def set_at_run_time(self, section: str, key: str) -> bool:
        """True when `[section] key` was set by this process (an environment
        variable), not read from the file."""
        return (section, key) in self._origins

    def origin(self, section: str, key: str) -> str:
        """Where the value of `[section] key` came from, for messages."""
        if (section, key) in self._origins:
            return self._origins[(section, key)]
        where = f" in {self.path}" if self.path and self._parser.has_option(section, key) else ""
        return f"[{section}] {key}{where}"

    def render(self) -> str:
        """The effective configuration, defaults included, as INI text."""
        out = io.StringIO()
        for section in sorted(set(DEFAULTS) | set(self._parser.sections())):
            out.write(f"[{section}]\n")
            keys = dict(DEFAULTS.get(section, {}))
            if self._parser.has_section(section):
                keys.update({k: v for k, v in self._parser.items(section, raw=True)})
            for key, value in keys.items():
                out.write(f"    {key} = {value}\n")
            out.write("\n")
        return out.getvalue()

    def save(self, path: Path | None = None) -> None:
        target = path or self.path
        if target is None:
            raise ConfigError("no configuration file to write to")
        write_atomic(target, self.render(), mode=0o644)


def _parser() -> configparser.ConfigParser:
    return configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=("#", ";"),
        default_section="__defaults__",
        strict=False,
    )


def load_config(path: Path) -> AgentConfig:
    """Read tether.conf; a missing file means all defaults."""
    parser = _parser()
    if path.exists():
        try:
            parser.read_string(path.read_text(), source=str(path))
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot parse {path}: {exc}") from exc
        except PermissionError as exc:
            raise ConfigError(f"cannot read {path}: permission denied") from exc
    return AgentConfig(parser, path)
