"""Fixtures of every layer. The package logs nothing until an application enables it (a
library's manners); the tests are the application here, and read what it logs."""

from __future__ import annotations

from loguru import logger

import supervisor  # noqa: F401  (imported first: importing it disables its log)

logger.enable("supervisor")
