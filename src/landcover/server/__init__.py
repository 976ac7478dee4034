"""``landcover serve``: the server half of the workflow — models installed once, classification jobs submitted by
a team and run on a cluster, results published as map layers.

- :mod:`.app`: the FastAPI application (:func:`~.app.create_app`) and its routes;
- :mod:`.store`: installed models and jobs in a database (SQLAlchemy: SQLite by default, PostgreSQL with ``--db``);
- :mod:`.jobs` and :mod:`.worker`: the fair queue, one process per job running
  :func:`~landcover.classify.classify_pixels`, progress, cancelling, resuming after a restart;
- :mod:`.catalog` and :mod:`.submit`: what is checked before a model is installed or a job queued;
- :mod:`.tiles`: XYZ tiles, TileJSON and WMTS capabilities with rio-tiler;
- :mod:`.security`: the write token, paths confined to ``--data-root``, bounded request sizes;
- :mod:`.client`: ``landcover classify --server URL`` (standard library only);
- ``static/``: the web page and Leaflet (BSD-2-Clause, bundled: the page works offline).

The service needs the ``serve`` extra: ``pip install 'landcover[serve]'``.
"""
