"""One module of page routes per resource, as the API has one router per resource."""
