"""The example app's tasks: plain functions under Django's ``@task``."""

try:
    from django.tasks import task
except ImportError:  # Django < 6.0: the django-tasks backport
    from django_tasks import task


@task
def order_total(prices: list[float], discount: float = 0.0) -> float:
    """Add up an order's prices, less a discount."""
    return round(sum(prices) * (1 - discount), 2)


@task(queue_name="emails", priority=10)
def send_receipt(to: str, total: float) -> str:
    """'Send' a receipt (returns what it would send)."""
    return f"receipt for {total} sent to {to}"
