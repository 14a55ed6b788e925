from django.db import models


class Job(models.Model):
    tenant = models.CharField(max_length=255)
    cost_microcents = models.BigIntegerField()
