"""The store's Lua scripts (taskbeam/store/scripts.py): their bytes are pinned, and
each compiles in a real Redis.

The fast listener cuts task events out of the exact text the append script
publishes (test_emitter_publish.py checks it against the stock emitter's), and a
running Redis caches scripts by SHA1: a changed byte must be a decision, made here.
"""

import hashlib

import pytest

from taskbeam.store import scripts

# SHA1 of each script: as taskbeam/store.py had it before the package split, but for
# those changed on purpose since (each says why).
PINNED = {
    "CREATE": "227f00a06376a8c4df7fa672dc532153bfac9c4c",  # + per-address cap (quotas)
    # + workflows: the roll-up into the parent, the stage in running events (issue 33)
    "APPEND": "a6c8a149918e267007e313f0dafdc520520f80c1",
    "PUBLISH": "c46943f7732a43a2c683bcf54f7e27558d850d80",
    "REMOVE_FINISHED": "db03a94ce7537bd958f90afc9e3bada33ad6737f",  # + a workflow's children
    "CREATE_CHILDREN": "0b9f264dab0503f34daa6b498989cf76fcdb4db4",
    "CANCEL_CHILDREN": "df1701e21fedf6687ac00fc352cf97957629f82d",
    "FLUSH_ROLLUPS": "be889cf6f9512a5e28b8de8836dcc521dc1b10cb",
    "CLAIM_RUN": "33d10fd96309acaf46451927999a78763723b56a",
    "RENEW_LEASE": "12b0da416084dc0fe0628dedbc15ce78cff166d9",
    "RELEASE_LEASE": "c2304db2ff002d13e69da2c3eb4fa1c9c81bb2e9",
    "REAP": "9b0f49828e26394e4b63c9a718780c93424780ad",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_script_is_byte_for_byte_the_pinned_one(name):
    assert hashlib.sha1(getattr(scripts, name).encode()).hexdigest() == PINNED[name]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_script_compiles_in_redis_under_its_sha(redis_client, name):
    assert redis_client.script_load(getattr(scripts, name)) == PINNED[name]
