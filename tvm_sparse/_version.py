"""The package's version, kept apart so that any module can read it without importing the
package's ``__init__`` (which imports nearly everything). Keep it equal to pyproject.toml's."""

__version__ = "0.1.0"
