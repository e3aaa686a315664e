"""Built-in equivalents of Istio's sample images, run by the lab for a container that has an image and
no command (``lab.sample_images`` maps the image to one of these modules).

Each module is a small standard-library program answering as the original image does on the paths
Istio's samples and docs use. The lab runs them as ``python -S <this directory> <app> [args]``
(``__main__.py``): with ``-S`` no site-packages are loaded, so a pod's process imports neither the
project nor any third-party package, only this package and the standard library.
"""

APPS = ("httpbin", "helloworld", "tcp_echo", "details", "ratings", "reviews", "productpage")
