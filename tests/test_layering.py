"""protocols must import without torch or securefedrec (DESIGN.md dependency direction)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_protocols_import_with_torch_and_securefedrec_blocked() -> None:
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "securefedrec"):
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Block())
        import protocols, protocols.secagg, protocols.plaintext, protocols.registry
        for name in protocols.PROTOCOLS:
            protocols.registry.get_aggregator.__call__  # registry reachable
        import importlib
        for target in protocols.PROTOCOLS.values():
            importlib.import_module(target.split(":")[0])
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
