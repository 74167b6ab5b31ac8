"""Log in, the notifications page, and the view that publishes to a user."""

from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_POST

from notifier.live import pubsub


@login_required
def home(request: HttpRequest) -> HttpResponse:
    page: HttpResponse = render(request, "home.html", {"topic": f"user.{request.user.pk}"})
    return page


@login_required
@require_POST
def notify(request: HttpRequest) -> HttpResponse:
    """Publish ``text`` to the user named ``to``: every tab they have open, on every worker."""
    target = get_user_model().objects.filter(username=request.POST.get("to", "")).first()
    text = request.POST.get("text", "")
    if target is None or not text:
        return HttpResponseBadRequest("notify needs an existing user 'to' and a 'text'\n")
    pubsub.publish(f"user.{target.pk}", text)
    return HttpResponse(f"published to {target.username}\n", content_type="text/plain")


urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("", home, name="home"),
    path("notify", notify, name="notify"),
]
