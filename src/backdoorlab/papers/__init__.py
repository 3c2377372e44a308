"""Paper reproductions: one module per paper, each a function from a recipe to a report."""
