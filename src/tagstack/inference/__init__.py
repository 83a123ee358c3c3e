"""Using a trained tagger: :class:`~.tagger.Tagger` for files and arrays, :mod:`.outputs` for batch jobs."""
