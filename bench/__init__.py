"""Side-by-side benchmark of maitred, HAProxy and NGINX (`python -m bench`)."""
