"""Everything that speaks the Vast.ai wire format: the query language and the HTTP client."""
