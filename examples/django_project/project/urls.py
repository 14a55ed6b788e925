from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tenants/<str:tenant>", views.tenant),
    path("jobs/<str:tenant>", views.run_job),
]
