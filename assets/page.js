// Sliders that update the model from the keyboard too.
// Gradio's slider sends its `release` event (which re-renders the model) on pointer-up and when
// its number box loses focus; typing a value and pressing Enter, or moving a focused slider with
// the arrow keys, sent nothing the model listens to. Here:
//   - Enter in a slider's number box blurs it (Gradio then sends `release` with the typed value);
//   - releasing an arrow / Page / Home / End key on a slider (or its number box) sends the
//     pointer-up that Gradio turns into `release`.
(function () {
  "use strict";
  var STEP_KEYS = {
    ArrowLeft: 1, ArrowRight: 1, ArrowUp: 1, ArrowDown: 1, PageUp: 1, PageDown: 1, Home: 1, End: 1,
  };

  function sliderInput(el) {
    if (!el || el.tagName !== "INPUT" || (el.type !== "range" && el.type !== "number")) return null;
    var block = el.closest(".block");
    return block && block.querySelector("input[type=range]") ? el : null;
  }

  document.addEventListener("keydown", function (event) {
    var input = sliderInput(event.target);
    if (input && input.type === "number" && event.key === "Enter") {
      event.preventDefault();
      input.blur();
    }
  }, true);

  document.addEventListener("keyup", function (event) {
    var input = sliderInput(event.target);
    if (input && STEP_KEYS[event.key]) {
      input.dispatchEvent(new PointerEvent("pointerup", { bubbles: true, composed: true }));
    }
  }, true);
})();
