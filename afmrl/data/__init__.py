"""Catalog data: one schema for every catalog, adapters for the shared data sets, images."""
from afmrl.data.schema import CATALOG_COLUMNS, CatalogError, validate_catalog
from afmrl.data.catalogs import load_catalog, read_catalog_file, grocery_catalog, pricerunner_catalog

__all__ = ["CATALOG_COLUMNS", "CatalogError", "validate_catalog", "load_catalog",
           "read_catalog_file", "grocery_catalog", "pricerunner_catalog"]
