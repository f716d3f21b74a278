// Human review: keys 1-4 pick A, B, tie or both bad on the item page, unless the reviewer is typing.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || target.closest("textarea, input[type=text], select")) {
      return;
    }
    var radios = document.querySelectorAll('.judgment input[name="choice"]');
    var index = "1234".indexOf(event.key);
    if (index < 0 || !radios[index]) {
      return;
    }
    radios[index].checked = true;
    radios[index].focus();
    event.preventDefault();
  });
})();
