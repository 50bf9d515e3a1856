"""genzoo's version, importable from anywhere in the package without importing the package's facade."""

__version__ = "0.1.0"
