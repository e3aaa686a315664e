"""Issue 18's adversarial attacks re-run against a real lab (`bench/attacks.py`): the frames the
attacker sends (`frames`), the attacker and the bystander that run inside the lab's pods (`attacker`,
`bystander`) and the report (`report`)."""
