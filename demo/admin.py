from django.contrib import admin

from bulkwrites.admin_actions import CopyToDynamoDBMixin
from demo.models import Customer, Order


@admin.register(Customer)
class CustomerAdmin(CopyToDynamoDBMixin, admin.ModelAdmin[Customer]):
    list_display = ("id", "name", "email", "country", "vip", "created_at")
    list_filter = ("country", "vip")
    search_fields = ("name", "email")


@admin.register(Order)
class OrderAdmin(CopyToDynamoDBMixin, admin.ModelAdmin[Order]):
    list_display = ("id", "number", "customer", "total", "status", "placed_at")
    list_filter = ("status", "customer__country")
    search_fields = ("number",)
    list_select_related = ("customer",)
