"""asv plug-in (``plugins`` in asv.conf.json): asv's ``existing`` environment, named by the Python
version instead of the interpreter's path.

asv names an ``existing`` environment after the path of its interpreter
(``existing-py_home_me_project_.venv_bin_python``) and records that path as the ``python`` of every
result, so each clone, virtualenv and CI runner starts a series of its own. asv has no option for
the name; an environment plug-in is asv's own way to define one. ``existing-portable`` behaves as
``existing`` in every other respect (nothing is installed; results are saved only with
``--set-commit-hash``) and is named ``existing-py<major.minor>``, so a developer's runs and CI's
on the same machine class and Python join one series.

asv imports this module from its working directory (the project root: the leading dot of the
plug-in's name in the config). It is also imported, harmlessly, when asv discovers the benchmarks
of this folder: it defines no benchmark.
"""

from __future__ import annotations

import os
import sys

from asv import util
from asv.environment import EnvironmentUnavailable, ExistingEnvironment, get_env_name


class PortableExistingEnvironment(ExistingEnvironment):
    tool_name = "existing-portable"

    def __init__(self, conf, executable, requirements, tagged_env_vars):
        # the version first: asv's constructor already reads the name
        exe = sys.executable if executable == "same" else executable
        try:
            exe = os.path.abspath(util.which(exe))
            script = "import sys; print('%d.%d' % sys.version_info[:2])"
            self._version = util.check_output([exe, "-c", script]).strip()
        except (util.ProcessError, OSError):
            raise EnvironmentUnavailable() from None
        super().__init__(conf, executable, requirements, tagged_env_vars)

    @property
    def name(self) -> str:
        return get_env_name("existing", self._version, {}, self._tagged_env_vars)

    @property
    def python(self) -> str:
        return self._version
