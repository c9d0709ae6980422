"""Rewrite README.md's migration table from the params (autotrain.params.migration)."""

from pathlib import Path

from autotrain.params.migration import readme_with_table

readme = Path(__file__).resolve().parent.parent / "README.md"
readme.write_text(readme_with_table(readme.read_text()))
