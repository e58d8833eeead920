"""Maps the import name cuda_gqa.<x> onto the top-level folder <x>.

The same arrangement ExecuTorch uses for executorch.backends -> backends/:
the repository keeps the layout of the product card, the import name stays
one namespace. Everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

TOP_LEVEL_FOLDERS = ("backends", "runtime", "export")

package_dir = {}
packages = []
for folder in TOP_LEVEL_FOLDERS:
    name = f"cuda_gqa.{folder}"
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
