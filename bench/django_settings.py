"""Django settings for the outbox's anchors (``bench/anchors.py``): what a Django site that
queues its mail with django-post_office or django-mailer would run, pointed at the bench's
private PostgreSQL cluster and its smtp-sink (given in the environment by the bench)."""

from __future__ import annotations

import os

SECRET_KEY = "bench-only"  # a throw-away process that serves nothing
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "post_office", "mailer"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BENCH_DB_NAME", "postgres"),
        "USER": os.environ.get("BENCH_DB_USER", "postgres"),
        "HOST": os.environ.get("BENCH_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_DB_PORT", "5432"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = int(os.environ.get("BENCH_SINK_PORT", "25"))
# The settings the issue measured post_office with: batches of 100, 5 threads per process.
POST_OFFICE = {
    "BATCH_SIZE": 100,
    "THREADS_PER_PROCESS": 5,
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
}
MAILER_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
MAILER_LOCK_PATH = os.path.join(os.environ.get("BENCH_WORKDIR", "/tmp"), "mailer-send")
LOGGING_CONFIG = None  # the anchors' per-message logging at INFO would measure the terminal
# post_office renders every subject and body as a template, even without one.
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
