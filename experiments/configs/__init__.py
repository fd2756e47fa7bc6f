"""One config file per study: ``get_config(arg)``; ``common.py`` has the argument grammar."""
