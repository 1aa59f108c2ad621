from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from governance.selectors import memberships_for_user


@login_required
def home(request):
    return render(request, "home.html", {"memberships": memberships_for_user(user=request.user)})
