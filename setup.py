"""Everything but one step is in pyproject.toml: putting `vidpress_torchvision.pth` at the top of site-packages.

Python runs a `.pth` file's `import` lines at interpreter start only from the site-packages root, which package
data cannot reach. build_py copies it next to the top-level modules, so a wheel (`pip install .`) installs it
there; in an editable install (`pip install -e .`) setuptools' build writes the installed files into the
editable wheel's root instead (its `install_lib`), which is where the file goes then.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "vidpress_torchvision.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        target = Path(self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).parent / PTH, target / PTH)

    def get_outputs(self, include_bytecode=True):
        extra = [] if self.editable_mode else [str(Path(self.build_lib) / PTH)]
        return super().get_outputs(include_bytecode) + extra


setup(cmdclass={"build_py": BuildPyWithPth})
