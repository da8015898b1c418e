"""Cleanroom standards and grade monitoring.

`iso14644` and `annex1` hold the standards as data and pure functions (ISO 14644-1:2015
class limits, sample volume and locations; EU GMP Annex 1 particle tables and monitoring
rules). `rooms` holds the site's room and pressure-link config and turns it into the flat
limit rules the alarm engine evaluates. Nothing here does I/O. See docs/cleanroom.md.
"""
