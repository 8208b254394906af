"""What survives a restart: the document store (``Store.transition``, the one compare-and-set for a resource's
state), time stamps and etags, the work queue between resources and workers, named crash points."""
