"""`python -m runtime.psql` (`make psql`): psql on the database in use.

Uses the psql that ships with the embedded server, so it works on a machine without one.
"""

import signal
import subprocess
import sys
import warnings

from runtime.embedded import resolve_url
from runtime.settings import get_settings


def main() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pgserver._commands import POSTGRES_BIN_PATH

    url = resolve_url(get_settings())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to psql
    return subprocess.call([str(POSTGRES_BIN_PATH / "psql"), url, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
