"""Rewrite docs/migration.md's table from the params (autotrain.params.migration)."""

from pathlib import Path

from autotrain.params.migration import readme_with_table

page = Path(__file__).resolve().parent.parent / "docs" / "migration.md"
page.write_text(readme_with_table(page.read_text()))
