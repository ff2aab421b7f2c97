"""Results: the store, statistics, tables, runs' records, comparisons, verification, published numbers."""
