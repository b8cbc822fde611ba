"""llm-homelab: run local LLMs across a homelab (`inv -l` here, `fab -H host TASK` on a host)."""

from invoke import Collection

from tasks import doctor, fleet, git, lint, models, remote, server, test
from tasks._task import check_env_overrides

check_env_overrides()

ns = Collection(models, server, git, test, lint, doctor, remote, fleet)
