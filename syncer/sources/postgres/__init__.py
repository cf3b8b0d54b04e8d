"""PostgreSQL source: logical decoding with the built-in pgoutput plugin, through SQL."""
