"""Encrypted model fields and blind indexes.

Public names (and the paths migrations use): :class:`EncryptedField`, :class:`BlindIndexField`,
:class:`KeyVersionField`, :class:`Sealed`, :data:`NOT_ADOPTED`, :func:`normalize_text`.

The modules, one concept each:

* :mod:`.encrypted`: the field, its descriptor and read path;
* :mod:`.options`: how an option given on the base field or on the wrapper is merged;
* :mod:`.blind_index`: the searchable HMAC column;
* :mod:`.lookups`: ``exact`` / ``in`` through the blind index, ``isnull``; everything else refused;
* :mod:`.refusals`: ordering, aggregation, ``distinct()`` on ciphertext refused;
* :mod:`.writes`: companion columns kept right on every write path;
* :mod:`.queryset`: the queryset class every manager of such a model gets;
* :mod:`.uniqueness`: unique blind indexes in ``validate_unique()``;
* :mod:`.adoption`: reading and retiring a legacy column;
* :mod:`.companion`: the ``<name>_key_version`` column;
* :mod:`.sealed`: what an attribute holds before it is read;
* :mod:`.wiring`: what ``class_prepared`` does for a model with encrypted fields.
"""

from . import wiring  # noqa: F401  (connects class_prepared)
from .blind_index import BlindIndexField, normalize_text
from .companion import KeyVersionField
from .encrypted import EncryptedField
from .sealed import NOT_ADOPTED, Sealed

__all__ = ["NOT_ADOPTED", "BlindIndexField", "EncryptedField", "KeyVersionField", "Sealed", "normalize_text"]
