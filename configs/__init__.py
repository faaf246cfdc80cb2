"""The preset files (``carracing.yaml``, ``doom_takecover.yaml``): a package so that they
ship as package data and are found the same way from a checkout, an editable install and
a wheel (:func:`worldmodels.config.config_dir`)."""
