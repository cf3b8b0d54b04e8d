"""Sources: where changes come from. One package per kind (`postgres`, `materialize`),
the registry of kinds (`kinds`), and the Django-free helpers they share: names
(`identifiers`, `relations`), positions, DSN resolving, values and SQL error wording."""
