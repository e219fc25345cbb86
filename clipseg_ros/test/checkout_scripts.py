"""
Load a script of the checkout's ``scripts/`` folder as a module, for the tests of the scripts.

The scripts are not part of the installed package. Each puts the checkout's package folder on
``sys.path`` when loaded; that change is undone here, so the tests keep using the installed
package (import it before calling this).
"""

import importlib.util
from pathlib import Path
import sys

SCRIPTS = Path(__file__).resolve().parents[2] / 'scripts'


def load_script(name: str):
    """Execute ``scripts/<name>.py`` and return it as a module named ``name``."""
    saved_path = list(sys.path)
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
    return module
