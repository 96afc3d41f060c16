"""Ship the repository's generated stubs (../../generated/tally) in the wheel as the `tally` package.

A hook rather than `force-include`: hatchling applies force-include to editable installs as
well, and a copy of the stubs in site-packages would hide every later `make generate`. An
editable install finds them through `dev-mode-dirs` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class GeneratedStubsHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return
        stubs = (Path(self.root) / "../../generated/tally").resolve()
        if not (stubs / "account" / "v1" / "account_pb2.py").is_file():
            raise FileNotFoundError(f"no generated stubs at {stubs}: run `make generate` in the repository")
        build_data["force_include"][str(stubs)] = "tally"
