"""Ships the Hydra configs inside the package: conf/ (with conf/experiment -> experiments/ as real files) is copied
to dpo_exp/conf in every non-editable build (wheel, `pip install git+...`). Editable installs read the checkout."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        shutil.copytree(root / "conf", Path(self.build_lib) / "dpo_exp" / "conf", symlinks=False, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithConfigs})
