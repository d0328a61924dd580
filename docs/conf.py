"""Sphinx configuration for lk_scatterlight.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (or
``tox -e build_docs``). The package is documented from its installed copy: no
``sys.path`` changes, the version comes from the installed metadata.
The build needs no network: intersphinx is deliberately not enabled.
"""

import warnings
from importlib.metadata import version as _version

# lightkurve 2.x warns at import that its optional PRF module lacks oktopus;
# it has nothing to do with these docs.
warnings.filterwarnings("ignore", message="Warning: the tpfmodel submodule", category=UserWarning)

project = "lk_scatterlight"
author = "lk_scatterlight developers"
copyright = "lk_scatterlight developers"
release = _version("lk_scatterlight")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_automodapi.automodapi",
    "sphinx_automodapi.smart_resolver",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# `name` in docstrings links to the object when it can be found; with
# nitpicky off, names that cannot be resolved are rendered without a link.
default_role = "obj"
nitpicky = False

# numpy-style docstrings (napoleon).
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes" sections do not duplicate autodoc's entries
napoleon_use_rtype = False

# automodapi writes its generated stubs to docs/api/ (git-ignored).
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc "Parameters" sections already give types

html_theme = "alabaster"
html_title = f"lk_scatterlight {release}"
html_theme_options = {
    "description": "Remove TESS scattered light from target pixel files",
}

# Parameter types such as "array of float, shape (ntime,)" contain words that are
# also attribute names of several classes (shape, time, sector...); Sphinx warns
# that such a word has more than one possible target. They are prose, not links.
suppress_warnings = ["ref.python"]
