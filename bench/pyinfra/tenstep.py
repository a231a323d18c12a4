"""The same ten commands as bench/tenstep/Mockerfile: ten server.shell operations."""

from pyinfra.operations import server

server.shell(name="step 1", commands=["true"])
server.shell(name="step 2", commands=["true"])
server.shell(name="step 3", commands=["true"])
server.shell(name="step 4", commands=["true"])
server.shell(name="step 5", commands=["true"])
server.shell(name="step 6", commands=["true"])
server.shell(name="step 7", commands=["true"])
server.shell(name="step 8", commands=["true"])
server.shell(name="step 9", commands=["true"])
server.shell(name="step 10", commands=["true"])
