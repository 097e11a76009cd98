"""The duplicate-key policy in SQL (``ItemQuerySet.apply_duplicate_policy``) on a staged ledger."""

from __future__ import annotations

import pytest

from bulkwrites.models import Item, ItemStatus, Job, SourceKind
from bulkwrites.services import staging
from bulkwrites.sources.rows import SourceRow

pytestmark = pytest.mark.django_db(transaction=True)


def pk_of(item: Item) -> str:
    assert item.key is not None
    return str(item.key["pk"]["S"])


@pytest.mark.parametrize(
    ("policy", "code", "skipped", "failed", "kept"),
    [("last", "Superseded", 1, 0, 4), ("first", "Superseded", 1, 0, 3), ("reject", "DuplicateKey", 0, 2, None)],
)
def test_two_keys_that_share_a_hash_are_never_taken_for_duplicates(
    policy: str, code: str, skipped: int, failed: int, kept: int | None
) -> None:
    # Only rows whose key hash occurs more than once are ranked, and the key itself decides
    # within them: two keys given the same hash (a collision, forced here) both stay pending,
    # while the true duplicate is resolved by the policy.
    job = Job.objects.create(
        table_name="t", key_schema=[{"name": "pk", "type": "S", "role": "HASH"}], source_kind=SourceKind.FILE
    )
    rows = [{"pk": "a"}, {"pk": "b"}, {"pk": "dup", "n": "3"}, {"pk": "dup", "n": "4"}]
    staging.stage_job(job, [SourceRow(n, row) for n, row in enumerate(rows, start=1)], dynamodb_json=False)
    items = Item.objects.filter(job=job)
    items.update(status=ItemStatus.PENDING, error_code="", error_message="")  # as before the policy ran
    by_key = {pk_of(i): i for i in items if pk_of(i) != "dup"}
    Item.objects.filter(pk=by_key["b"].pk).update(key_hash=by_key["a"].key_hash)

    assert Item.objects.apply_duplicate_policy(job.pk, policy, code=code) == (skipped, failed)

    pending = Item.objects.filter(job=job, status=ItemStatus.PENDING)
    assert {by_key["a"].pk, by_key["b"].pk} <= set(pending.values_list("pk", flat=True))
    marked = list(Item.objects.filter(job=job).exclude(status=ItemStatus.PENDING))
    assert len(marked) == skipped + failed
    assert all(i.key == {"pk": {"S": "dup"}} and i.error_code == code for i in marked)
    if kept is not None:  # the winning copy of "dup" is the row the policy names
        assert pending.get(key={"pk": {"S": "dup"}}).position == kept
