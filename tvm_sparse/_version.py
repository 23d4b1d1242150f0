"""The package's version, kept apart so that any module can read it without importing the
package's ``__init__`` (which imports nearly everything); pyproject.toml reads it from here."""

__version__ = "0.1.0"
