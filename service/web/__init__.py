"""Server-rendered pages for people: the same permissions and answers as the JSON API,
because every page reads and writes through it (see api_client)."""
