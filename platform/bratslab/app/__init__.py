"""The application layer: the ``bratslab`` command line (:mod:`bratslab.app.main`, one module per
command group in :mod:`bratslab.app.cli`) and the end-to-end demo. Nothing below imports it."""
