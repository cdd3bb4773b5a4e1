"""Review of agent output: /reviews/ (queue), /reviews/<id>/ (diff), /reviews/<id>/file (one file's
hunks, an htmx partial), POST /reviews/<id>/decide/<approve|request-changes|reject|revert>."""

from django.urls import path

from reviews import views

urlpatterns = [
    path("", views.review_queue, name="review_queue"),
    path("approve-safe", views.review_approve_safe, name="review_approve_safe"),
    path("<int:session_id>/", views.review_diff, name="review_diff"),
    path("<int:session_id>/file", views.review_file, name="review_file"),
    path("<int:session_id>/decide/<str:decision>", views.review_decide, name="review_decide"),
]
