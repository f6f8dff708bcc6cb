"""Catalogue format version 1 (docs/catalogue.md): the manifest's identity and the file names."""

from __future__ import annotations

import os
from typing import Union

FORMAT = "fyp_core.catalogue"
VERSION = 1
MANIFEST = "manifest.json"
ITEMS = "items.parquet"
ITEM_EMB = "item_embeddings.npy"
USERS = "users.parquet"
USER_EMB = "user_embeddings.npy"
CREATORS = "creators.parquet"

PathLike = Union[str, "os.PathLike[str]"]
