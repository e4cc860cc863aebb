"""A config.json as an older version of vaekit wrote it."""

from vaekit.config import ADDED_FIELDS


def as_version(d: dict, version: int) -> dict:
    """``d`` (a ``RunConfig.to_dict()``) without the fields versions after ``version`` added,
    and saying ``version``: a file that version wrote. Changed in place and returned."""
    for later, added in ADDED_FIELDS.items():
        for section, names in added.items():
            for name in names if later > version else ():
                d[section].pop(name, None)
    d["version"] = version
    return d
