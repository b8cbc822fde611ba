"""llm-homelab: run local LLMs across a homelab (`inv -l` here, `fab -H host TASK` on a host)."""

import sys
from pathlib import Path

from invoke import Collection

# `inv` finds this package without putting the checkout on sys.path: make `inference_server`, beside
# it, importable in a checkout that was not `pip install -e`'d (appended: an installed copy still wins).
_CHECKOUT = str(Path(__file__).resolve().parent.parent)
if _CHECKOUT not in sys.path:
    sys.path.append(_CHECKOUT)

from tasks import config, doctor, fleet, gateway, git, lint, models, remote, server, test  # noqa: E402 (after sys.path)
from tasks._task import check_env_overrides  # noqa: E402

check_env_overrides()

ns = Collection(models, server, gateway, config, git, test, lint, doctor, remote, fleet)
